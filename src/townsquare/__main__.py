from townsquare.cli import app

app(prog_name="townsquare")
