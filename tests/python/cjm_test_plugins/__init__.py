"""Python test plugins for cjm's compatibility suite: written against cjm-plugin-system 0.0.28's
PluginInterface and run by its unchanged universal worker."""
