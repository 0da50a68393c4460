"""timm model registrations; importing this module registers every ``simwnw_*`` model."""
from .resnet import SimWnWResNet  # noqa: F401  (registers simwnw_resnet*)
from .vit import SimWnWVisionTransformer  # noqa: F401  (registers simwnw_vit_*)
from .dualgate_resnet import DualGateResNet  # noqa: F401  (registers simwnw_dualgate_resnet18*)
