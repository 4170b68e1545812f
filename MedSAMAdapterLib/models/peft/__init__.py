"""Parameter-efficient fine-tuning (Med-SA adapters, SD-Trans, HyP-Adpt, LoRA) for ``PromptableSam``.

Typical use::

    model = registry.load_model("litemedsam")
    apply_peft(model, PeftConfig(recipe="medsa"))
    print(configure_trainable(model, "medsa"))     # freezes all, unfreezes the recipe's tensors
    ... train (set_peft_train_mode keeps frozen BatchNorms in eval) ...
    checkpoints.save_adapter("runs/liver", model, "medsa", ...)

Every tensor added by surgery has a ``peft_`` name component; base keys never change (see ``surgery``).
"""

from .adapters import Adapter, MedSATinyViTBlock, MedSAVitBlock, is_peft_name
from .depth import near_square
from .hyper import AdaptedTwoWayBlock, HyperPromptAdapter, PromptContext
from .lora import LoRALinear, apply_lora
from .policy import (RECIPES, ParameterReport, configure_trainable, parameter_report, set_peft_train_mode,
                     trainable_names)
from .text import TextPrompts, apply_text_prompts, normalise_name, understood
from .surgery import (PeftConfig, adapter_state_dict, apply_decoder_adapters, apply_medsa, apply_peft,
                      load_adapter_state_dict, set_depth_chunk)

__all__ = [
    "Adapter", "MedSAVitBlock", "MedSATinyViTBlock", "is_peft_name", "near_square", "HyperPromptAdapter",
    "PromptContext", "AdaptedTwoWayBlock", "LoRALinear", "apply_lora", "RECIPES", "ParameterReport",
    "configure_trainable", "parameter_report", "set_peft_train_mode", "trainable_names", "PeftConfig",
    "adapter_state_dict", "apply_decoder_adapters", "apply_medsa", "apply_peft", "load_adapter_state_dict",
    "set_depth_chunk", "TextPrompts", "apply_text_prompts", "normalise_name",
    "understood",
]
