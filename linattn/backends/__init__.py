"""One module per implementation. Each defines ``BACKEND``; see ``linattn._registry``."""
