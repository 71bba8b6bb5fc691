from distpar.cli import main

main()
