"""The GPT in PyTorch."""
