from vilearn.cli import app

app(prog_name="vilearn")
