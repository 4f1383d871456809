"""Released weights: the strict converter of timm's and the official checkpoints (`convert`) and
the hub's download and converted-model cache (`hub`)."""
