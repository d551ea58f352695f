from bogc_cli.cli import main

main()
