from eva_operator.main import main

main()
