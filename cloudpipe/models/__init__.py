"""Networks built by name: the presence classifier, smp segmentation models, tiny stand-ins."""
