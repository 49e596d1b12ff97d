"""One line of help per control and figure, in a musician's words: what it does to the sound and when
to change it. Model words (perplexity, dead codes, code tokens, nats/token) appear only beside a plain
phrase; tests/test_browser_words.py checks the page for them."""
from __future__ import annotations

HELP = {
    # dataset tab: training settings
    "preset": "Auto sizes the models to your collection; Quick look trains small models for a minute or "
              "two, to hear what Distill makes of your sounds before a longer run.",
    "device": "Where training runs. Auto takes a graphics card when there is one, otherwise the processor.",
    "minutes": "How long training may take in all. Longer usually sounds cleaner, up to a point; the preset's "
               "time is a good start.",
    "levels": "How many layers of detail describe each moment of sound: more levels keep more of the timbre, "
              "but give the sequence model more to learn.",
    "codebook": "How many different sound snippets each level can tell apart: more gives finer timbre; a small "
                "collection fills fewer.",
    "seed": "Training starts from chance: another seed gives a slightly different model from the same sounds.",
    "hidden": "How much the sequence model can hold in mind at once: wider learns more patterns but needs more "
              "material and time; keep the tier's value unless results sound muddled.",
    "layers": "How many steps of reasoning the sequence model takes per moment: more layers learn longer "
              "patterns (rhythms, phrases), and train slower.",
    "heads": "How many things the sequence model can listen back for at once (pitch, rhythm, texture). Must "
             "divide the width; rarely worth changing.",
    "dropout": "Makes the model forget a little on purpose while it learns, so it invents rather than copies. "
               "Raise it if generated sounds replay your files; lower it if they sound vague.",
    "lr": "How big a step the sequence model takes as it learns: too high and the loss jumps around, too low "
          "and it learns slowly. The tier's value is a safe start.",
    # generate tab
    "seconds": "How long each generated sound is, from 0.1 s to 600 s (10 minutes).",
    "temperature": "How adventurous each next moment is. Lower: safer, more repetitive. Higher: wilder, "
                   "noisier. 1 plays it as learnt.",
    "top_k": "Lets each moment choose only among the k most likely sound snippets: small values sound tamer and "
             "cleaner. 0 keeps every choice open.",
    "top_p": "Drops the unlikely choices that make up the last part of the odds: below 1 removes stray clicks "
             "and oddities. 1: keep them all.",
    "gen_seed": "The roll of the dice: the same seed and settings give the same sound again; change it for "
                "another take.",
    "variations": "How many takes to make at once, with seeds seed, seed+1, …",
    "format": "WAV plays everywhere; FLAC is the same sound in a smaller file.",
    "saved_samples": "Every sound generated from this run, newest first. Click one to play it again and see "
                     "its codes.",
    # figures
    "code_grid": "The codes behind the sound: time runs left to right, one row per level (the top row is the "
                 "broad shape, lower rows the detail), one colour per sound snippet. Repeating patterns are "
                 "repeating sounds.",
    "histogram": "How often each sound snippet (code) occurs, in your files and in what was generated: the "
                 "more the two shapes agree, the more the generated sounds use your palette.",
    "reconstruction": "Your file, and the same file turned into codes and back into sound by the sound "
                      "model. How close they are tells how much of your sound the codes keep. A new sound "
                      "gets its broad levels from the sequence model and its fine detail from your files.",
    # training tab
    "vq_plot": "The sound model learning to turn your audio into codes and back: lower is closer to your "
               "files; the green line is files it does not train on, and when it flattens, more minutes add little.",
    "prior_plot": "The sequence model learning which code comes next, and how surprised the model is by "
                  "sounds it did not train on (validation perplexity: about how many codes it still hesitates "
                  "between). Lower is better; when the green line turns up, it has started to memorise.",
    "health_plot": "How many of each level's sound snippets are in regular use: most of them in use means "
                   "the codes describe your material finely; many never used means a smaller model would do.",
    "retrain_minutes": "How long the new sequence model may train; empty keeps the preset's time.",
    # variations tab
    "v_source": "What to make variations of: one of your training files, a sound generated earlier, or any "
                "audio file of your own.",
    "v_mode": "Keep the shape: the broad outline stays, the detail is new. Continue from here: everything "
              "before the point stays, and the model carries on from it.",
    "v_at": "Where the new material begins, in seconds from the start of the input.",
    "v_seconds": "How much new material follows that point.",
    "v_seed": "The roll of the dice: the same seed gives the same variations again.",
    "follow": "How closely each next moment follows your own files: high keeps the character of your "
              "material, 0 lets the sequence model alone decide.",
}

# A jargon word may appear on the page only with one of these plain phrases beside it.
JARGON_PLAIN = {
    "perplexity": ("codes in regular use", "how surprised the model is"),
    "nats/token": ("how surprised the model is",),
    "nats / token": ("how surprised the model is",),
    "dead codes": ("never used", "unused"),
    "code tokens": ("moments of sound", "codes to learn from"),
}
