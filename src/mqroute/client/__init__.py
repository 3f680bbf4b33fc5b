"""The client SDK: async (``connection``), robust (``robust``) and blocking (``blocking``)."""
