"""Small Python tasks, each with a correct solution, a subtly buggy one and a test that tells them apart.

Templates use ``$placeholders`` (string.Template) so code braces need no escaping. Every variant is
a (function name, constants) combination, so prompts, code and tests differ from row to row.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    prompt: str
    correct: str
    buggy: str
    test: str
    bug: str
    variants: tuple[dict, ...]


def _names(*names: str, **constants) -> tuple[dict, ...]:
    return tuple({"name": name, **constants} for name in names)


FAMILIES: list[Family] = [
    Family(
        prompt="`$name(n)` that returns the sum of all multiples of $k from $k up to and including n.",
        correct="def $name(n):\n    total = 0\n    for x in range($k, n + 1, $k):\n        total += x\n    return total",
        buggy="def $name(n):\n    total = 0\n    for x in range($k, n, $k):\n        total += x\n    return total",
        test="assert $name($k * 5) == $k * 15\nassert $name($k - 1) == 0",
        bug="off-by-one range end",
        variants=tuple(v for k in range(2, 10) for v in _names(f"sum_multiples_of_{k}", f"total_of_multiples_{k}", k=k)),
    ),
    Family(
        prompt="`$name(nums)` that counts how many numbers in nums are strictly greater than $k.",
        correct="def $name(nums):\n    count = 0\n    for x in nums:\n        if x > $k:\n            count += 1\n    return count",
        buggy="def $name(nums):\n    count = 0\n    for x in nums:\n        if x >= $k:\n            count += 1\n    return count",
        test="assert $name([$k, $k + 1, $k - 1, $k + 5]) == 2\nassert $name([]) == 0",
        bug="wrong comparison (>= instead of >)",
        variants=tuple(v for k in (0, 3, 5, 10, 18, 21, 50, 100) for v in _names(f"count_above_{k}", f"how_many_over_{k}", k=k)),
    ),
    Family(
        prompt="`$name(values)` that returns the largest number in a non-empty list without using max().",
        correct="def $name(values):\n    best = values[0]\n    for v in values[1:]:\n        if v > best:\n            best = v\n    return best",
        buggy="def $name(values):\n    best = 0\n    for v in values:\n        if v > best:\n            best = v\n    return best",
        test="assert $name([3, 9, 2]) == 9\nassert $name([-5, -2, -9]) == -2",
        bug="initialises the maximum to 0, wrong for all-negative lists",
        variants=_names("largest", "find_max", "biggest_value", "maximum_of", "top_value", "max_without_builtin"),
    ),
    Family(
        prompt="`$name(values)` that returns the smallest number in a non-empty list without using min().",
        correct="def $name(values):\n    best = values[0]\n    for v in values[1:]:\n        if v < best:\n            best = v\n    return best",
        buggy="def $name(values):\n    best = 0\n    for v in values:\n        if v < best:\n            best = v\n    return best",
        test="assert $name([4, 7, 9]) == 4\nassert $name([2, -3]) == -3",
        bug="initialises the minimum to 0, wrong for all-positive lists",
        variants=_names("smallest", "find_min", "lowest_value", "minimum_of", "least_item", "min_without_builtin"),
    ),
    Family(
        prompt="`$name(item, $coll=None)` that appends item to the list $coll, starting a new list when none is given, and returns the list.",
        correct="def $name(item, $coll=None):\n    if $coll is None:\n        $coll = []\n    $coll.append(item)\n    return $coll",
        buggy="def $name(item, $coll=[]):\n    $coll.append(item)\n    return $coll",
        test="first = $name(1)\nsecond = $name(2)\nassert second == [2]\nassert $name(3, [0]) == [0, 3]",
        bug="mutable default argument shared between calls",
        variants=tuple({"name": n, "coll": c} for n, c in [
            ("add_item", "items"), ("append_to", "bucket"), ("collect", "values"), ("add_tag", "tags"),
            ("record_event", "events"), ("push_value", "stack"), ("enqueue", "queue"), ("add_score", "scores"),
            ("log_message", "messages"), ("add_guest", "guests"), ("track_id", "ids"), ("store_word", "words")]),
    ),
    Family(
        prompt="`$name(nums)` that returns the arithmetic mean of a non-empty list of numbers as a float.",
        correct="def $name(nums):\n    return sum(nums) / len(nums)",
        buggy="def $name(nums):\n    return sum(nums) // len(nums)",
        test="assert $name([1, 2]) == 1.5\nassert $name([4]) == 4",
        bug="integer division truncates the mean",
        variants=_names("average", "mean_value", "compute_mean", "avg", "mean_of", "average_score", "mean_length", "arithmetic_mean"),
    ),
    Family(
        prompt="`$name(items)` that returns the last $k elements of items as a list (all of them if there are fewer).",
        correct="def $name(items):\n    return list(items[-$k:])",
        buggy="def $name(items):\n    return list(items[len(items) - $k + 1:])",
        test="assert $name(list(range(10))) == list(range(10 - $k, 10))\nassert $name([1]) == [1]",
        bug="off-by-one slice start",
        variants=tuple(v for k in range(2, 8) for v in _names(f"last_{k}_items", f"tail_{k}", k=k)),
    ),
    Family(
        prompt="`$name(text)` that returns True if text reads the same backwards and forwards, ignoring case.",
        correct="def $name(text):\n    lowered = text.lower()\n    return lowered == lowered[::-1]",
        buggy="def $name(text):\n    return text == text[::-1]",
        test="assert $name('Level')\nassert $name('noon')\nassert not $name('hello')",
        bug="forgets to ignore case",
        variants=_names("is_palindrome", "reads_same_backwards", "palindrome_check", "is_mirror_word", "check_palindrome", "symmetric_word"),
    ),
    Family(
        prompt="`$name(text)` that returns True if text is a palindrome when spaces and case are ignored.",
        correct="def $name(text):\n    cleaned = text.replace(' ', '').lower()\n    return cleaned == cleaned[::-1]",
        buggy="def $name(text):\n    cleaned = text.lower()\n    return cleaned == cleaned[::-1]",
        test="assert $name('Never odd or even')\nassert $name('abba')\nassert not $name('abc')",
        bug="forgets to remove spaces",
        variants=_names("is_phrase_palindrome", "palindrome_phrase", "sentence_is_palindrome", "loose_palindrome", "is_palindrome_ignoring_spaces", "phrase_reads_same"),
    ),
    Family(
        prompt="`$name(text)` that counts the vowels (a, e, i, o, u) in text, in upper or lower case.",
        correct="def $name(text):\n    return sum(1 for ch in text.lower() if ch in 'aeiou')",
        buggy="def $name(text):\n    return sum(1 for ch in text if ch in 'aeiou')",
        test="assert $name('AEIOU xyz') == 5\nassert $name('banana') == 3",
        bug="misses upper-case vowels",
        variants=_names("count_vowels", "vowel_count", "number_of_vowels", "tally_vowels", "vowels_in", "count_vowel_letters", "num_vowels", "vowel_total"),
    ),
    Family(
        prompt="`$name(n)` that returns '$w1$w2' if n is divisible by both $a and $b, '$w1' if only by $a, '$w2' if only by $b, and otherwise str(n).",
        correct="def $name(n):\n    if n % $a == 0 and n % $b == 0:\n        return '$w1$w2'\n    if n % $a == 0:\n        return '$w1'\n    if n % $b == 0:\n        return '$w2'\n    return str(n)",
        buggy="def $name(n):\n    if n % $a == 0:\n        return '$w1'\n    if n % $b == 0:\n        return '$w2'\n    if n % $a == 0 and n % $b == 0:\n        return '$w1$w2'\n    return str(n)",
        test="assert $name($a * $b) == '$w1$w2'\nassert $name($a) == '$w1'\nassert $name($b) == '$w2'\nassert $name(1) == '1'",
        bug="checks the single cases before the combined case",
        variants=tuple({"name": f"{w1.lower()}_{w2.lower()}_{a}_{b}", "a": a, "b": b, "w1": w1, "w2": w2} for a, b, w1, w2 in [
            (3, 5, "Fizz", "Buzz"), (2, 7, "Ping", "Pong"), (4, 9, "Tick", "Tock"), (3, 7, "Foo", "Bar"),
            (5, 6, "Zip", "Zap"), (2, 9, "Bing", "Bong"), (4, 5, "Hop", "Skip"), (3, 8, "Snap", "Crackle"),
            (6, 7, "Ding", "Dong"), (5, 9, "Flip", "Flop")]),
    ),
    Family(
        prompt="`$name(items, target)` that returns the index of the first occurrence of target in items, or -1 if it is absent.",
        correct="def $name(items, target):\n    for i in range(len(items)):\n        if items[i] == target:\n            return i\n    return -1",
        buggy="def $name(items, target):\n    for i in range(len(items) - 1):\n        if items[i] == target:\n            return i\n    return -1",
        test="assert $name([4, 5, 6], 6) == 2\nassert $name([4, 5, 4], 4) == 0\nassert $name([1], 9) == -1",
        bug="loop stops one element early",
        variants=_names("find_index", "index_of", "position_of", "locate", "first_index", "search_list", "find_position", "where_is"),
    ),
    Family(
        prompt="`$name(sentence)` that returns the words of sentence in reverse order, joined by single spaces (words may be separated by several spaces).",
        correct="def $name(sentence):\n    return ' '.join(reversed(sentence.split()))",
        buggy="def $name(sentence):\n    return ' '.join(reversed(sentence.split(' ')))",
        test="assert $name('hello   big world') == 'world big hello'\nassert $name('one') == 'one'",
        bug="splits on single spaces, keeping empty words",
        variants=_names("reverse_words", "backwards_sentence", "flip_word_order", "words_reversed", "reverse_sentence", "invert_words"),
    ),
    Family(
        prompt="`$name(nums)` that returns the running totals of nums, e.g. [1, 2, 3] -> [1, 3, 6].",
        correct="def $name(nums):\n    totals = []\n    total = 0\n    for x in nums:\n        total += x\n        totals.append(total)\n    return totals",
        buggy="def $name(nums):\n    totals = []\n    total = 0\n    for x in nums:\n        totals.append(total)\n        total += x\n    return totals",
        test="assert $name([1, 2, 3]) == [1, 3, 6]\nassert $name([]) == []",
        bug="appends the total before adding the current value",
        variants=_names("running_total", "cumulative_sum", "prefix_sums", "running_sums", "accumulate_values", "partial_sums"),
    ),
    Family(
        prompt="`$name(n)` that returns n factorial (n! = 1 x 2 x ... x n, and 0! = 1).",
        correct="def $name(n):\n    result = 1\n    for i in range(1, n + 1):\n        result *= i\n    return result",
        buggy="def $name(n):\n    result = 1\n    for i in range(1, n):\n        result *= i\n    return result",
        test="assert $name(5) == 120\nassert $name(0) == 1",
        bug="range stops before n",
        variants=_names("factorial", "fact", "compute_factorial", "n_factorial", "factorial_of", "product_up_to"),
    ),
    Family(
        prompt="`$name(text)` that counts the words in text, where words are separated by any amount of whitespace.",
        correct="def $name(text):\n    return len(text.split())",
        buggy="def $name(text):\n    return len(text.split(' '))",
        test="assert $name('one  two three') == 3\nassert $name('word') == 1",
        bug="split(' ') counts empty strings between repeated spaces",
        variants=_names("count_words", "word_count", "number_of_words", "words_in", "tally_words", "count_tokens"),
    ),
    Family(
        prompt="`$name(items)` that removes duplicates from items while keeping the order of first appearance.",
        correct="def $name(items):\n    seen = set()\n    result = []\n    for item in items:\n        if item not in seen:\n            seen.add(item)\n            result.append(item)\n    return result",
        buggy="def $name(items):\n    return list(set(items))",
        test="assert $name([3, 1, 3, 2]) == [3, 1, 2]\nassert $name([]) == []",
        bug="a set loses the original order",
        variants=_names("dedupe", "unique_in_order", "remove_duplicates", "distinct_items", "unique_preserving_order", "drop_repeats"),
    ),
    Family(
        prompt="`$name(year)` that returns True if year is a leap year in the Gregorian calendar.",
        correct="def $name(year):\n    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)",
        buggy="def $name(year):\n    return year % 4 == 0 and year % 100 != 0",
        test="assert $name(2024)\nassert $name(2000)\nassert not $name(1900)\nassert not $name(2023)",
        bug="forgets the divisible-by-400 rule",
        variants=_names("is_leap_year", "leap_year", "check_leap", "is_leap", "has_feb_29", "gregorian_leap"),
    ),
    Family(
        prompt="`$name(nums)` that returns the second largest distinct value in nums (assume at least two distinct values).",
        correct="def $name(nums):\n    distinct = sorted(set(nums))\n    return distinct[-2]",
        buggy="def $name(nums):\n    return sorted(nums)[-2]",
        test="assert $name([5, 5, 3]) == 3\nassert $name([1, 4, 2]) == 2",
        bug="duplicates of the maximum are not removed",
        variants=_names("second_largest", "runner_up", "second_highest", "next_biggest", "second_max", "silver_value"),
    ),
    Family(
        prompt="`$name(items)` that splits items into consecutive lists of $k elements (the last one may be shorter).",
        correct="def $name(items):\n    return [items[i:i + $k] for i in range(0, len(items), $k)]",
        buggy="def $name(items):\n    return [items[i:i + $k] for i in range(0, len(items) - $k, $k)]",
        test="data = list(range(2 * $k + 1))\nassert $name(data) == [data[:$k], data[$k:2 * $k], data[2 * $k:]]",
        bug="range end drops the last chunk",
        variants=tuple(v for k in range(2, 6) for v in _names(f"chunks_of_{k}", f"split_into_{k}s", k=k)),
    ),
    Family(
        prompt="`$name(celsius)` that converts a temperature from Celsius to Fahrenheit.",
        correct="def $name(celsius):\n    return celsius * 9 / 5 + 32",
        buggy="def $name(celsius):\n    return celsius * 5 / 9 + 32",
        test="assert $name(100) == 212\nassert $name(0) == 32",
        bug="inverted conversion factor",
        variants=_names("to_fahrenheit", "celsius_to_fahrenheit", "c_to_f", "convert_to_f"),
    ),
    Family(
        prompt="`$name(fahrenheit)` that converts a temperature from Fahrenheit to Celsius.",
        correct="def $name(fahrenheit):\n    return (fahrenheit - 32) * 5 / 9",
        buggy="def $name(fahrenheit):\n    return (fahrenheit - 32) * 9 / 5",
        test="assert $name(212) == 100\nassert $name(32) == 0",
        bug="inverted conversion factor",
        variants=_names("to_celsius", "fahrenheit_to_celsius", "f_to_c", "convert_to_c"),
    ),
    Family(
        prompt="`$name(x, lo, hi)` that returns True if lo <= x <= hi (both ends inclusive).",
        correct="def $name(x, lo, hi):\n    return lo <= x <= hi",
        buggy="def $name(x, lo, hi):\n    return lo < x < hi",
        test="assert $name(5, 5, 10)\nassert $name(10, 5, 10)\nassert not $name(11, 5, 10)",
        bug="exclusive comparisons instead of inclusive",
        variants=_names("in_range", "between", "within_bounds", "is_between", "inside_interval", "in_closed_range"),
    ),
    Family(
        prompt="`$name(n)` that returns the sum of the decimal digits of the integer n, ignoring its sign.",
        correct="def $name(n):\n    return sum(int(d) for d in str(abs(n)))",
        buggy="def $name(n):\n    return sum(int(d) for d in str(n))",
        test="assert $name(123) == 6\nassert $name(-123) == 6",
        bug="fails on negative numbers",
        variants=_names("digit_sum", "sum_of_digits", "add_digits", "digits_total", "cross_sum", "digit_total"),
    ),
    Family(
        prompt="`$name(items, k)` that rotates items to the right by k positions; k may be larger than the list.",
        correct="def $name(items, k):\n    if not items:\n        return []\n    k %= len(items)\n    return items[-k:] + items[:-k] if k else list(items)",
        buggy="def $name(items, k):\n    if not items:\n        return []\n    return items[-k:] + items[:-k] if k else list(items)",
        test="assert $name([1, 2, 3], 1) == [3, 1, 2]\nassert $name([1, 2, 3], 4) == [3, 1, 2]",
        bug="k is not reduced modulo the length",
        variants=_names("rotate_right", "rotate_list", "shift_right", "cycle_items", "rotate_by", "wrap_rotate"),
    ),
    Family(
        prompt="`$name(nums)` that returns the median of a non-empty list (the mean of the two middle values for even lengths).",
        correct="def $name(nums):\n    ordered = sorted(nums)\n    mid = len(ordered) // 2\n    if len(ordered) % 2:\n        return ordered[mid]\n    return (ordered[mid - 1] + ordered[mid]) / 2",
        buggy="def $name(nums):\n    mid = len(nums) // 2\n    if len(nums) % 2:\n        return nums[mid]\n    return (nums[mid - 1] + nums[mid]) / 2",
        test="assert $name([3, 1, 2]) == 2\nassert $name([4, 1, 3, 2]) == 2.5",
        bug="forgets to sort first",
        variants=_names("median", "median_of", "middle_value", "find_median", "compute_median", "list_median"),
    ),
    Family(
        prompt="`$name(items, target)` that performs binary search on a sorted list and returns the index of target, or -1.",
        correct="def $name(items, target):\n    lo, hi = 0, len(items) - 1\n    while lo <= hi:\n        mid = (lo + hi) // 2\n        if items[mid] == target:\n            return mid\n        if items[mid] < target:\n            lo = mid + 1\n        else:\n            hi = mid - 1\n    return -1",
        buggy="def $name(items, target):\n    lo, hi = 0, len(items) - 1\n    while lo < hi:\n        mid = (lo + hi) // 2\n        if items[mid] == target:\n            return mid\n        if items[mid] < target:\n            lo = mid + 1\n        else:\n            hi = mid - 1\n    return -1",
        test="assert $name([1, 3, 5], 5) == 2\nassert $name([1, 3, 5], 1) == 0\nassert $name([1, 3, 5], 4) == -1",
        bug="loop condition misses the last candidate",
        variants=_names("binary_search", "bsearch", "search_sorted", "find_sorted", "bisect_index", "sorted_index_of"),
    ),
    Family(
        prompt="`$name(text)` that counts how many times the letter '$ch' appears in text, ignoring case.",
        correct="def $name(text):\n    return text.lower().count('$ch')",
        buggy="def $name(text):\n    return text.count('$ch')",
        test="assert $name('$up$ch-$ch') == 3\nassert $name('') == 0",
        bug="does not ignore case",
        variants=tuple({"name": f"count_letter_{ch}", "ch": ch, "up": ch.upper()} for ch in "abdeklrst"),
    ),
    Family(
        prompt="`$name(nums)` that returns a new list where every value above $k is replaced by $k, leaving nums unchanged.",
        correct="def $name(nums):\n    return [min(x, $k) for x in nums]",
        buggy="def $name(nums):\n    for i, x in enumerate(nums):\n        if x > $k:\n            nums[i] = $k\n    return nums",
        test="data = [$k - 1, $k + 3]\nassert $name(data) == [$k - 1, $k]\nassert data == [$k - 1, $k + 3]",
        bug="modifies the caller's list in place",
        variants=tuple(v for k in (5, 10, 20, 100) for v in _names(f"cap_at_{k}", f"clip_to_{k}", k=k)),
    ),
]

PROMPT_PREFIXES = ["Write a Python function", "Implement a Python function", "Write me a Python function",
                   "Please write a function", "I need a Python function", "Write a function"]
ANSWER_INTROS = ["Here's a simple implementation:", "Here you go:", "This does it:", "Sure, here's one way:",
                 "Here's a straightforward version:"]
ANSWER_OUTROS = ["", "It runs in linear time.", "It handles the edge cases in the description.",
                 "You can drop it straight into your code.", "Let me know if you'd like tests for it."]
