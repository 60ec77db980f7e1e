"""The voice pipeline: audio helpers, turn taking, clause chunking, timings, VoiceAgent."""
