"""The message broker: Azure Service Bus (:mod:`.servicebus`) and its SQLite twin (:mod:`.sqlite_broker`),
which the local host and the tests run on."""
