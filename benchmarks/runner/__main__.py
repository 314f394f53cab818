from benchmarks.runner.run import main

main()
