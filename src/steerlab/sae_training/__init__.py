"""Training sparse autoencoders on a model's activations, and the text corpus they train on.
(The SAE itself, as a value that steering uses, lives in :mod:`steerlab.sae`.)"""
