from unifews_dist.console import main

main()
