from turbok.cli.main import main

main()
