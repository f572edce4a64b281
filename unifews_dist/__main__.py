from unifews_dist.cli import main

main()
