"""The GPT in Keras 3 on TensorFlow."""
