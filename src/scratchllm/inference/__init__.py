"""The inference layer: using a model. Decoding (generation.py), chat sessions and the HTTP server
(chat.py, serve.py, web/), fill-mask, translation and classification of texts."""
