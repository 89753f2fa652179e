"""Small chat samples of varied lengths used across tests."""

CONVERSATIONS = [
    [{"role": "user", "content": "How do I bake bread?"},
     {"role": "assistant", "content": "Mix flour, water, salt and yeast, knead, let it rise, then bake at 230C."}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Capital of France?"},
     {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Tell me a story about a lighthouse keeper who finds a message in a bottle."},
     {"role": "assistant", "content": "Every night Mara climbed the stairs. One morning a green bottle "
                                      "rolled onto the rocks, and inside was a map drawn by her grandfather."}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [{"role": "user", "content": "Explain recursion briefly."},
     {"role": "assistant", "content": "A function that calls itself on a smaller input until a base case."}],
]
