"""The cjm-substrate stand-in: the same stub as cjm_plugin_system.core.worker."""
from cjm_plugin_system.core.worker import main

if __name__ == "__main__":
    main()
