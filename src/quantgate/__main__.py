from quantgate.cli import run

run()
