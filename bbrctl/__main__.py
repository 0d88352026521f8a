from bbrctl.cli import main

main()
