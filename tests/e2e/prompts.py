"""Prompt sets for the end-to-end tests and benchmarks: long shared prefixes (a
support assistant's system prompt and a reference document) followed by distinct
questions, the shape of traffic where prefix reuse pays."""

SYSTEM = """You are the help desk assistant of the Riverside Public Library. Answer in two or three sentences, politely, and cite the policy section you rely on.

Section 1, Opening hours. The main branch opens at nine in the morning and closes at eight in the evening from Monday to Thursday. On Friday it closes at six. On Saturday it opens at ten and closes at five. It is closed on Sunday and on public holidays. The north branch keeps the same hours except that it opens at noon on Monday.

Section 2, Membership. Anyone who lives, works or studies in the county may join for free with a photo identity card and a proof of address dated within the last three months. Children under fourteen join with the signature of a parent or guardian. A lost card is replaced for two dollars.

Section 3, Borrowing. Adults may borrow up to twenty items at once, of which at most five may be films or games. Children may borrow up to ten items. Books are lent for three weeks, films and games for one week, and magazines for one week. Reference works and the current issue of each magazine stay in the building.

Section 4, Renewals. A loan may be renewed twice, online, by telephone or at any desk, unless another member has reserved the item. Renewals start from the day of the renewal, not from the old due date.

Section 5, Reservations. Members may reserve up to ten items, free of charge. Reserved items wait on the holds shelf for seven days after the member is told they have arrived.

Section 6, Fines. There are no fines for late books. Films and games cost fifty cents for each day they are late, up to a maximum of five dollars per item. Lost or damaged items are charged at their replacement cost. Members who owe more than ten dollars cannot borrow until they pay.

Section 7, Computers and printing. Members may book a public computer for two hours a day. Printing costs ten cents a page in black and white and fifty cents in colour. Wireless internet is free for everyone and needs no password.

Section 8, Rooms. The two meeting rooms hold twelve and forty people. Community groups may book them free of charge up to four times a month; businesses pay twenty dollars an hour."""

QUESTIONS_A = [
    "What time does the main branch close on Friday?",
    "How many films can an adult borrow at once?",
    "Can I renew a book that someone else has reserved?",
    "How much does it cost to print five colour pages?",
]

QUESTIONS_B = [
    "Is the library open on Sunday?",
    "How long can I keep a magazine?",
    "What happens if I lose my library card?",
    "How much is the fine for a game returned three days late?",
]


def prompt(question: str) -> str:
    return f"{SYSTEM}\n\nQuestion: {question}\nAnswer:"


def set_a() -> list[str]:
    return [prompt(q) for q in QUESTIONS_A]


def set_b() -> list[str]:
    return [prompt(q) for q in QUESTIONS_B]
