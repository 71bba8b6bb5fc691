from distpar.cli.main import main

main()
