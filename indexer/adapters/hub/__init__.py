"""The Hub adapter: a Hub-compatible endpoint over a folder (``server``), its fault injection
(``faults``), and the client side that lists, screens and downloads models through the real
``huggingface_hub`` client (``client``, ``watcher``)."""
