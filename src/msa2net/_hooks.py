"""Functions a lower floor calls but a higher floor supplies (a leaf module: it imports nothing).

:data:`model_card_builder` writes the model card of ``MSA2Net.save_pretrained``: models sit below reporting and never
import it, so the top package (``msa2net/__init__.py``) puts the card builder here when it is imported, and
:func:`msa2net.models.pretrained.save_pretrained` reads it when a card is asked for.
"""

from __future__ import annotations

from collections.abc import Callable

#: ``builder(config, repo_id=...) -> str``: the model card text of a folder from its ``config.json`` content;
#: None until the top package installs one.
model_card_builder: Callable[..., str] | None = None
