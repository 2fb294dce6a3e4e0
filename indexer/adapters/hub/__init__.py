"""The Hub adapter: the client side that lists, screens and downloads models through the real
``huggingface_hub`` client (``client``, ``watcher``), and how both read the Hub's metadata
(``metadata``). The loopback Hub the tests and the demo run against is in ``indexer.testbed.hub``."""
