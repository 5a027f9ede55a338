from mlenv._entry import main

main()
