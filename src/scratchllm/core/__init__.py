"""The bottom layer: files, downloads, devices and console notes; it imports nothing else of scratchllm."""
