from mishbench.cli import main

main()
