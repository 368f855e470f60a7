"""Protocol codecs without Flask: Open Inference Protocol (V2) and MLflow formats."""
