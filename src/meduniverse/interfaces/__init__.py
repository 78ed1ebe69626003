"""What users touch: the command line, prediction on image files and the HTML report."""
