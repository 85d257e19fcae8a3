from quantgate.cli.main import run

run()
