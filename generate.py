"""generate.py: sample readable text from a trained checkpoint.

    python generate.py --checkpoint checkpoints/awd.pt
    python generate.py --checkpoint checkpoints/awd.pt --prompt "The castle was" --words 60 \\
        --temperature 0.8 --top-p 0.9 --seed 7

The prompt is tokenised the WikiText way and read by the model first; sampling starts from
the hidden state after it, and the printed text begins with the prompt. Without a prompt
the model starts as at a line break. Output is detokenised into plain text (`<eos>`
becomes a line break) unless --raw asks for WikiText tokens. The checkpoint is the only
input: it carries the model's configuration and vocabulary.
"""

import hashlib
import sys

import torch

import checkpoint
from checkpoint import CheckpointError
from data import EOS, UNK, detokenize, tokenize
from devices import PRECISIONS, pick_device, set_precision
from settings import COUNT, SEED, Parser, SettingsError, ShowDefaults, check_output_file, checked
from util import WriteFailed, write_atomically


def filter_logits(logits, top_k=0, top_p=1.0):
    """Keep the `top_k` most likely tokens and the smallest set whose probability reaches
    `top_p` (nucleus); the others get -inf. logits: (ntoken,)."""
    if top_k and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already reach top_p (the first one stays)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return logits


def next_token(logits, temperature, top_k, top_p, generator):
    """The next token id from (ntoken,) logits: argmax at temperature 0, else a sample."""
    if temperature == 0:
        return int(torch.argmax(logits))
    logits = filter_logits(logits / temperature, top_k, top_p)
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


@torch.no_grad()
def generate(model, vocab, prompt_tokens, words, temperature=1.0, top_k=0, top_p=1.0,
             seed=1111, allow_unk=False):
    """The prompt's tokens followed by `words` sampled tokens (a list of strings). The draws
    come from a generator seeded by `seed` and the prompt together: the same seed and
    prompt give the same text, and another prompt other draws, so that even a weak model,
    whose next-word guesses hardly depend on the prompt, does not repeat itself."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(sampling_seed(seed, prompt_tokens))
    context = vocab.encode(prompt_tokens or [EOS])
    out = model(torch.tensor(context, device=device).view(-1, 1), model.init_hidden(1))
    hidden, logits = out.hidden, model.scores(out)[-1, 0].float().cpu()
    banned = None if allow_unk or UNK not in vocab else vocab.word2idx[UNK]
    sampled = []
    for _ in range(words):
        if banned is not None:
            logits[banned] = float("-inf")
        token = next_token(logits, temperature, top_k, top_p, generator)
        sampled.append(vocab.idx2word[token])
        out = model(torch.tensor([[token]], device=device), hidden)
        hidden, logits = out.hidden, model.scores(out)[-1, 0].float().cpu()
    return list(prompt_tokens) + sampled


def sampling_seed(seed, prompt_tokens):
    """A seed for the sampler's generator from --seed and the prompt."""
    text = f"{seed}:{' '.join(prompt_tokens)}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little")


def parse_args(argv=None):
    p = Parser(description="Sample text from a trained checkpoint.",
               formatter_class=ShowDefaults)
    p.add_argument("--checkpoint", required=True, help="a model checkpoint written by train.py")
    p.add_argument("--prompt", default="", help="text the sample continues")
    p.add_argument("--words", type=COUNT, default=100, help="tokens to sample")
    p.add_argument("--temperature", default=1.0,
                   type=checked(float, lambda v: v >= 0, "not be negative; 0 means greedy"),
                   help="0 picks the most likely word")
    p.add_argument("--top-k", dest="top_k", default=0,
                   type=checked(int, lambda v: v >= 0, "not be negative; 0 turns it off"),
                   help="sample among the k most likely words (0: all)")
    p.add_argument("--top-p", dest="top_p", default=1.0,
                   type=checked(float, lambda v: 0 < v <= 1, "be in (0, 1]"),
                   help="sample among the most likely words whose probability reaches p")
    p.add_argument("--seed", type=SEED, default=1111, help="same seed, same text")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to sample (auto: CUDA when available, else the CPU)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="float32 math as train.py --precision sets it (sampling is float32); "
                        "default: the checkpoint's")
    p.add_argument("--outf", help="write the text to this file instead of the terminal")
    p.add_argument("--raw", action="store_true", help="print WikiText tokens unchanged")
    p.add_argument("--allow-unk", dest="allow_unk", action="store_true",
                   help=f"let the model sample {UNK}")
    p.add_argument("--info", action="store_true",
                   help="print how the checkpoint was trained (settings, command, commit, "
                        "versions, device, data) and exit")
    return p.parse_args(argv)


def render(tokens, raw):
    """WikiText tokens as the corpus writes them (raw) or as readable text."""
    if raw:
        return " ".join(tokens).replace(f" {EOS} ", "\n").replace(EOS, "\n")
    return detokenize(tokens)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.info:
            print("\n".join(checkpoint.describe(args.checkpoint)))
            return
        if args.outf:
            check_output_file(args.outf, "--outf")
        device = pick_device(args.device)
        model, vocab, saved = checkpoint.load_model(args.checkpoint, device)
        set_precision(args.precision or checkpoint.precision(saved), device, training=False)
    except (CheckpointError, SettingsError) as e:
        sys.exit(f"error: {e}")
    prompt = tokenize(args.prompt)
    unknown = sorted({t for t in prompt if t not in vocab})
    if unknown:
        print(f"not in the vocabulary, read as {UNK}: {', '.join(unknown)}", file=sys.stderr)
    try:
        tokens = generate(model, vocab, prompt, args.words, args.temperature, args.top_k,
                          args.top_p, args.seed, args.allow_unk)
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    text = render(tokens, args.raw)
    if args.outf:
        try:  # (whole or not at all: an earlier file stays as it was)
            write_atomically(args.outf, text + "\n")
        except WriteFailed as e:
            sys.exit(f"error: --outf: {e}")
        print(f"wrote the prompt and {args.words} sampled tokens to {args.outf}",
              file=sys.stderr)
    else:
        print(text)


if __name__ == "__main__":
    main()
