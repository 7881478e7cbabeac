"""Knowledge-distillation terms from the dense network to a sparse subnet (pure functions).

Sparse Cocktail adds, on sparse steps, a KD term from the dense network's prediction on the
same batch (loss = (1 - w) task + w KD, w = 0.5). For detectors the natural analogue is the
classification outputs: softmax RoI class logits and sigmoid objectness / class maps.
"""
import torch.nn.functional as F


def softmax_kd(student_logits, teacher_logits, temperature=1.0):
    """KL(teacher || student) of softmax distributions over the last dim, times T^2."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=-1),
                    F.softmax(teacher_logits.detach() / t, dim=-1),
                    reduction='batchmean') * t * t


def sigmoid_kd(student_logits, teacher_logits):
    """Binary cross-entropy of the student's logits against the teacher's probabilities."""
    return F.binary_cross_entropy_with_logits(student_logits,
                                              teacher_logits.detach().sigmoid())
