"""Reports of a results folder: plots, HTML and Markdown, table exports."""
