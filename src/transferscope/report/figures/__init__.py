"""Report figures: one module per analysis, functions ``plot_*`` -> Figure and ``caption_*`` -> str."""
