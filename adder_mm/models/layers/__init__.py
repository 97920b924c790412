from .adder_conv import AdderConv2d
from .qat_adder_conv import QATAdderConv2d
from .quant_adder_conv import QuantAdderConv2d

__all__ = ['ADDER_LAYERS_KEY', 'AdderConv2d', 'QATAdderConv2d',
           'QuantAdderConv2d', 'count_adder_layers']

# Checkpoint meta key holding count_adder_layers of the saved model: tells
# an AdderNet's checkpoint from its CNN twin's (same keys and shapes).
ADDER_LAYERS_KEY = 'adder_layers'


def count_adder_layers(model):
    """Number of adder layers (float or quantized) in ``model``."""
    return sum(isinstance(m, (AdderConv2d, QuantAdderConv2d))
               for m in model.modules())
