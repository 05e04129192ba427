from lmfoundry.cli.main import main

main()
