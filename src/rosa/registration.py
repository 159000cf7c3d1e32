"""RoSA as a PEFT method: the one place that extends PEFT's method registry.

``peft.register_peft_method`` only accepts names already in ``peft.PeftType``, a closed enum, so
``ROSA`` is added to that enum first (Python 3.13's ``EnumType._add_member_`` does exactly this; for
older Pythons the same four entries are written by hand). Everything else goes through PEFT's public
registration: after ``import rosa``, ``PeftConfig.from_pretrained``, ``PeftModel.from_pretrained``,
``AutoPeftModelForCausalLM`` and ``get_peft_model`` know RoSA like any built-in method.

The enum extension relies on PEFT internals, so it runs only on the PEFT versions it was tested with
(``SUPPORTED_PEFT``, also stated in ``pyproject.toml``). On any other version ``import rosa`` still
works (data tools, evaluation of base models and LoRA adapters), and creating a ``RoSAConfig`` raises
:class:`UnsupportedPeftError` naming the installed and the supported versions.
"""

from __future__ import annotations

import enum

import peft
from packaging.version import Version

from rosa.errors import RoSAError

NAME = "rosa"
PREFIX = "rosa_"
# Tested with every release in this range (docs/peft-integration.md); keep in step with pyproject.toml.
SUPPORTED_PEFT = (Version("0.19.0"), Version("0.22.0"))


class UnsupportedPeftError(RoSAError):
    """The installed peft cannot host RoSA."""


def _add_enum_member(enum_cls: type[enum.Enum], name: str) -> enum.Enum:
    if name in enum_cls.__members__:
        return enum_cls[name]
    member = str.__new__(enum_cls, name)
    member._name_ = name
    member._value_ = name
    if hasattr(enum_cls, "_add_member_"):  # Python >= 3.13
        enum_cls._add_member_(name, member)
    else:
        member._sort_order_ = len(enum_cls._member_names_)
        enum_cls._member_names_.append(name)
        enum_cls._member_map_[name] = member
        type.__setattr__(enum_cls, name, member)
    enum_cls._value2member_map_[name] = member
    return member


def require_peft_method():
    """``PeftType.ROSA`` (added to the enum on first use), or :class:`UnsupportedPeftError` naming the
    installed and the supported peft versions."""
    from peft.utils import PeftType

    installed = Version(peft.__version__)
    low, high = SUPPORTED_PEFT
    if not low <= installed < high:
        raise UnsupportedPeftError(
            f"RoSA needs peft >= {low}, < {high} (the versions its PEFT integration is tested with); "
            f"peft {installed} is installed. Install a supported one: pip install 'peft>={low},<{high}'."
        )
    return _add_enum_member(PeftType, NAME.upper())


def register(config_cls: type, model_cls: type) -> None:
    """Make RoSA a PEFT method (idempotent). On an unsupported peft nothing is registered: ``import rosa``
    still works, and creating a ``RoSAConfig`` says why RoSA itself cannot."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    try:
        peft_type = require_peft_method()
    except UnsupportedPeftError:
        return
    if peft_type not in PEFT_TYPE_TO_TUNER_MAPPING:
        register_peft_method(name=NAME, config_cls=config_cls, model_cls=model_cls, prefix=PREFIX)
