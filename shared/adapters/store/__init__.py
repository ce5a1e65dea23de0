"""The run store: Azure Tables (:mod:`.table_store`) and SQLite (:mod:`.sqlite_store`, local mode and
the twin the tests run on)."""
