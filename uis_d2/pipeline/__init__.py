"""The end-to-end demo pipeline: steps, pictures and the HTML report."""
