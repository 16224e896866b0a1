"""What runs on the user's side: the admin client, config migration, `init`'s starter
file and the demo backend. The daemon imports nothing from here.
"""
