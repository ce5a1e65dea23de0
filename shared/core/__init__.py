"""The orchestration core: one room per job (intake, poller, outbox, readiness) behind one face.

See :mod:`shared.core.service`. Imports no adapter and no SDK; the composition root
(:mod:`shared.composition`) builds the adapters and hands them in through the ports.
"""
