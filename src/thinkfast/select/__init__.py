"""Which attention layers a hybrid keeps, chosen by measurement (``thinkfast select-layers``)."""

from .layers import (METHODS, choose_layers, kl_guided_scores, layers_document, loo_scores, read_layers_json,
                     uniform_scores, write_layers_json)

__all__ = ["METHODS", "choose_layers", "kl_guided_scores", "layers_document", "loo_scores", "read_layers_json",
           "uniform_scores", "write_layers_json"]
