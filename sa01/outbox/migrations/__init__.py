"""Numbered SQL migrations (``NNNN_name.sql``), applied in order by ``sa01.outbox.migrate``."""
