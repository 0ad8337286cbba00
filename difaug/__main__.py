from difaug.cli import main

main()
