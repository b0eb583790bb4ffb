"""%hotswap magics for IPython and Jupyter."""
