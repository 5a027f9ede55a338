from mlenv.cli import main

main()
